"""integration/arcface_torch"""
