"""dflow-simplify: DP-GEN's simplify loop on dflow. The code lives in the top-level
``ops/`` and ``workflows/`` folders, installed as ``dflow_simplify.ops`` and
``dflow_simplify.workflows``."""

__version__ = "0.1.0"
