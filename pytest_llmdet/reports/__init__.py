"""What CI shows of a run, rendered from the one report dict that `--llm-report` writes as JSON
(json_report.build_report): the GitHub Actions job summary (markdown.py), the annotations on the test's line
(annotations.py) and the self-contained HTML report (html.py, whose snapshot cards are also pytest-html's
extras). Pure functions of that data: no pytest, no torch, no file written here (hooks/ci.py writes)."""
