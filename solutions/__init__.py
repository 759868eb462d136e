"""Reference solutions of every exercise in ``course_lib``, one module per course_lib module.

Each module defines, under the same qualified names as in ``course_lib``, the reference body of
every exercise of that module (a method's reference is a method of a same-named class here,
called with the course_lib instance as ``self``). Set ``COURSE_LIB_SOLUTIONS=1`` to run
``course_lib`` on them. This package is the instructor's: it is never released to learners.
"""
