"""The image's HEALTHCHECK: exit 0 when the server on DDPM_HOST:DDPM_PORT answers /readyz, 1 otherwise."""

from __future__ import annotations

import sys
import urllib.request

from .settings import Settings

# A server bound to every interface is reached on loopback; one bound to an address, at that address.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def readyz_url(settings: Settings) -> str:
    host = WILDCARDS.get(settings.host, settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/readyz"


def main() -> int:
    url = readyz_url(Settings.load())
    try:
        with urllib.request.urlopen(url, timeout=4):
            return 0
    except OSError as e:  # URLError, refused, timed out
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
