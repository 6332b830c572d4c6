"""The one exception type model construction raises.

It subclasses ValueError so callers that validate configs generically still
catch it, and its message always starts with the offending config field
(``model.name: ...``) so a user can fix the config without reading a traceback.
"""


class ModelError(ValueError):
    """Invalid model configuration; the message names the config field."""
