"""The pure vocabulary of the project: the run spec, presets, the data set registry, method,
metric and state names, the typed records the core reports, and file hashing.

Imports no other project package and no torch, web, queue or database library, so the core, the
service, the API and the client can all share it.
"""
