"""What the API, the worker and the core share: the run spec, presets and (later) settings and
database models. Imports neither torch nor any web or queue library."""
