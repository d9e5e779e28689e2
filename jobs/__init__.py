"""Jobs: each ``jobs/NAME.py`` has ``get_args_parser()`` and ``main(args)`` and runs as
``python -m jobs.NAME`` (locally, by ``ray job submit``, or as a KubeRay RayJob entrypoint)."""
