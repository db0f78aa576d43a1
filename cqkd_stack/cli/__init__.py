"""The only room that prints and exits: the Invoke tasks, the installed program, the
console (progress, tables), the report formats, the metrics exposition and the
``invoke.yaml`` check. Every other room returns values or raises; the one error
boundary (``tasks.operator_errors``) turns what they raise into a message and a code.
"""
