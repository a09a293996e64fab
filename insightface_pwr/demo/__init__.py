"""``insightface-pwr demo``: the paper's comparison (teacher, baseline, PWR-Exp, RKD-DA) on synthetic faces, CPU only.

Modules: ``faces`` (procedural identities and images), ``dataset`` (InsightFace RecordIO and verification ``.bin``
writers), ``backbones`` (the demo teacher's network, registered with the CPU host), ``recipes/`` (the demo's
recipe templates), ``pipeline`` (data -> recipes -> host training -> evaluation), ``report`` (table, JSON, PNG),
``cli`` (the command).
"""
