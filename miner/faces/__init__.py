"""The faces: the command line, the HTTP API and dashboard, the report, evaluation and calibration."""
