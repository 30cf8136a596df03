"""One pipeline per task (classify, detect, segment, explain, infer), shared by both APIs.

A servicer converts protobuf to the plain types of `request.py`, awaits the task's pipeline and
converts its plain result back. `core.Stages` holds the stages every pipeline goes through.
"""
