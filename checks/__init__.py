"""Built-in checks, one module per check. Imported as ``llava_doctor.checks`` (never as ``checks``)."""
