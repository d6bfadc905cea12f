"""Prints the commands that take a fresh ``make run`` to a first token (``make run`` shows it)."""

from __future__ import annotations

import sys

from issuer.errors import ConfigError
from issuer.settings import load_settings

TEMPLATE = """
────────────────────────────────────────────────────────────────────────────
 issuer is starting on {url}. In another shell, from this directory:

   printf '%s\\n' 'Quickstart-Pa55!' \\
       | .venv/bin/issuer users add alice --role engineer --password-stdin
   SECRET=$(.venv/bin/issuer clients add webapp | sed -n 's/^client_secret: //p')
   curl -s -u "webapp:$SECRET" -d grant_type=password -d username=alice \\
        -d 'password=Quickstart-Pa55!' {url}/oauth/token

 The README's quickstart goes on from there: refresh, userinfo, revoke.
────────────────────────────────────────────────────────────────────────────
"""


def main() -> int:
    try:
        url = load_settings().url
    except ConfigError as exc:
        sys.stderr.write("issuer: error: invalid configuration: " + "; ".join(exc.problems) + "\n")
        return 2
    sys.stdout.write(TEMPLATE.format(url=url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
