"""``python -m bsipatch`` and the ``bsipatch`` console script: run the CLI, exit with its code.

Kept light on purpose: a Ctrl-C that arrives while the commands are still being
imported exits like one that arrives later, with one line and code 130.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn


def entry() -> NoReturn:
    """Run :func:`bsipatch.cli.main.main` and exit with its code.

    After Ctrl-C (exit 130) the process ends at once instead of waiting for worker
    threads to finish work nobody wants any more (outputs were removed while unwinding).
    """
    try:
        from bsipatch.cli.main import main

        code = main()
    except KeyboardInterrupt:  # before main's own handler is in place (imports)
        print("bsipatch: interrupted", file=sys.stderr)
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if code == 130:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
