"""Write the bytecode of what the workloads and the test processes import, once, at ``make venv``.

This machine and CI set ``PYTHONDONTWRITEBYTECODE``: no import ever writes its bytecode, so every
interpreter compiles each module it imports from source again (the Kubernetes client's
``core_v1_api.py`` alone is 4.5 MB: a second of CPU in every process that names ``CoreV1Api``).
Bytecode once written is read whatever that variable says. Each argument is a module, or
``module:Attribute,...`` for what a package imports only when the attribute is first asked for
(the Kubernetes client's API classes).

Usage: python hack/warm_bytecode.py flag_scheduler.scheduling.handlers kubernetes.client:CoreV1Api ...
"""

from __future__ import annotations

import importlib
import sys


def main(specs: list[str]) -> None:
    sys.dont_write_bytecode = False  # only for the imports below: the variable is read at start
    for spec in specs:
        name, _, attributes = spec.partition(":")
        module = importlib.import_module(name)
        for attribute in filter(None, attributes.split(",")):
            getattr(module, attribute)


if __name__ == "__main__":
    main(sys.argv[1:])
