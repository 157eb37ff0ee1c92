"""Logic shared by every job image and by the Dagster side.

Each job image installs this package next to its entry script, and so does the code location,
so the vendor parsing that validates raw files, the cleaning that preprocesses them, and the
features that training and inference compute are the same code everywhere. It depends only on
pandas, numpy, scikit-learn, holidays and (optionally) dagster-pipes, never on Dagster itself.
"""

CANONICAL_COLUMNS = ("timestamp", "device_id", "energy_kwh")
