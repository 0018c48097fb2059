"""Adapters that let other libraries use BlendMask; each imports its library only when it is
imported itself (``blendmask.integrations.sahi`` needs ``pip install 'blendmask[sahi]'``)."""
