"""First-principles engines for RunFP: one module each, one interface (base.py)."""
