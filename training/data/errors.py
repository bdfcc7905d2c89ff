"""The dataset error, apart so that every reader (datasets, mni152, synthetic) raises it without importing another."""

from hrvit_nas import UserError


class DatasetError(UserError, ValueError):
    """A dataset spec that cannot be parsed, or a dataset directory that is missing or malformed."""
