"""Visible checks, one module per chapter (``ch01.py`` holds Chapter 1's).

Each check is a function of a :class:`course_lib.grading.Tester` registered with
:func:`course_lib.grading.visible_check`. Expected values are written out or computed by
trusted libraries (tiktoken), never by the code under test.
"""
