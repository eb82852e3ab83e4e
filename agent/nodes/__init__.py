"""Graph nodes: small functions over `State`; `agent/graph.py` wires them."""
