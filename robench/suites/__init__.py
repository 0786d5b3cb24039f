"""Suite definitions shipped with robench: the top-level attacks/ and corruptions/ folders of the repository,
installed as robench.suites.attacks / robench.suites.corruptions. A user suite may be given by path instead
(robench.suites.files reads both)."""

from robench.suites.files import KINDS, suite_names, is_suite_path, read_suite, parse_suite, load_suite  # noqa: F401
