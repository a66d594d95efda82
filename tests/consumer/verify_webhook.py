"""A consumer's check of a captured webhook, with the `standardwebhooks` package from PyPI,
not with export-relay's own code.

Reads {"secret", "headers", "body"} as JSON on stdin. Prints the event type and exits 0 when
the signature verifies; prints the error and exits 1 when it does not.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    request = json.load(sys.stdin)
    try:
        event = Webhook(request["secret"]).verify(request["body"], request["headers"])
    except Exception as error:  # the library raises WebhookVerificationError and friends
        print(f"not verified: {error}")
        return 1
    print(f"verified {event['type']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
