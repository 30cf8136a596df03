"""The Open Inference Protocol over HTTP/REST, the vision API as JSON, and the browser console.

A third thin front end beside the two gRPC servicers: requests become plain values, run through
the same request path (service/http/calls.py is the one module that calls into it) and the same
CallRunner (auth, limits, deadlines, metrics, request ids), and the answers go back as JSON.
"""
