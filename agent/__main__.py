"""``python -m agent`` is ``plprobe``."""

from agent.cli import main

raise SystemExit(main())
