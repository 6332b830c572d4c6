"""fl-sim's core: configuration, data, models, the task, run directories and the formats below everyone.

Importing it changes nothing outside it (no environment variables, no network settings);
the app layer (:mod:`app`) does that when it starts.
"""

__version__ = "0.1.0"
