//! The shell-word lexer: variable expansion and word splitting as BuildKit does them.
