"""Fixtures of the data-layer tests: the shared data kit (``$INSIGHTFACE_PWR_SHARED`` or ``../shared``)."""




