"""Evaluation of exported models on held-out data, from the ONNX file as the server runs it."""
