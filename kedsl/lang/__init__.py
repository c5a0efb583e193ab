"""The kedsl edit language: grammar, AST, parser, checker, formatter (torch-free)."""
