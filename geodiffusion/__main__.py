"""``python -m geodiffusion``: the command line."""

from geodiffusion.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
