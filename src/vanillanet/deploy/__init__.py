"""Deployment: the fast inference path, the backend table, ONNX graphs and int8."""
