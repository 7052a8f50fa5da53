"""The FastAPI service: validates and stores job specs, enqueues job ids, serves results.

Never imports torch or the training core.
"""
