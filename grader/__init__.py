"""Instructor-side grading: the sandbox, the judge and the nbgrader glue. Never released."""
