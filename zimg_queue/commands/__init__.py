"""The ``zimg`` subcommands that act on jobs (generate, status, cancel, batch) and ``up``'s first-run pieces.

``zimg_queue.cli`` builds the parser and dispatches here; each module is one concept.
"""
