"""What the API and the worker share: settings, the database and its models, job operations,
submission, tokens, change notifications, checkpoint storage, the queue and the migration runner.

Imports no torch and no web framework; the training core is never loaded from here.
"""
