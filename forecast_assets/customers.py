"""Customer ids, and the command that adds customers to the partition set (or removes them).

A customer id becomes an S3 prefix, part of a SageMaker job name and a database value, so one
rule decides what is valid: 1-32 characters of lowercase letters, digits and hyphens, starting
and ending with a letter or digit.
"""

from __future__ import annotations

import argparse
import re
import sys

CUSTOMER_ID_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
MAX_CUSTOMER_ID_LENGTH = 32


class InvalidCustomerIdError(ValueError):
    pass


def validate_customer_id(value: str) -> str:
    """Return ``value`` if it is a valid customer id, else raise with the rule in the message."""
    # fullmatch: with match, '$' also matches before a trailing newline ('acme\n' passed).
    if not isinstance(value, str) or not CUSTOMER_ID_PATTERN.fullmatch(value):
        raise InvalidCustomerIdError(
            f"invalid customer id {value!r}: use 1-{MAX_CUSTOMER_ID_LENGTH} lowercase letters, "
            "digits and hyphens, starting and ending with a letter or digit"
        )
    return value


def main(argv: list[str] | None = None) -> int:
    """``forecast-customers add|remove|list [ids]`` against the Dagster instance in DAGSTER_HOME.

    ``add`` refuses ids that break the customer id rule. ``remove`` takes any key in the
    partition set, valid or not (the UI's "Add partition" applies no rule, so a bad key can get
    in and must be removable from here too), and fails naming the keys that are not in the set;
    either way, a refused batch changes nothing.
    """
    import dagster as dg

    from forecast_assets.partitions import customers_partitions_def

    parser = argparse.ArgumentParser(prog="forecast-customers", description=main.__doc__)
    parser.add_argument("action", choices=["add", "remove", "list"])
    parser.add_argument("customer_ids", nargs="*")
    args = parser.parse_args(argv)
    name = customers_partitions_def.name
    assert name is not None
    instance = dg.DagsterInstance.get()
    if args.action == "list":
        for customer in instance.get_dynamic_partitions(name):
            print(customer)
        return 0
    if args.action == "remove":
        present = set(instance.get_dynamic_partitions(name))
        missing = [c for c in args.customer_ids if c not in present]
        if missing:
            print(
                f"not in the '{name}' partition set, nothing removed: "
                + ", ".join(repr(c) for c in missing),
                file=sys.stderr,
            )
            return 1
        for customer in args.customer_ids:
            instance.delete_dynamic_partition(name, customer)
        print(f"remove: {', '.join(args.customer_ids) or '(none)'}")
        return 0
    try:
        ids = [validate_customer_id(c) for c in args.customer_ids]
    except InvalidCustomerIdError as exc:
        print(exc, file=sys.stderr)
        return 2
    instance.add_dynamic_partitions(name, ids)
    print(f"add: {', '.join(ids) or '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
