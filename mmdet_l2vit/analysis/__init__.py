"""Analysis helpers: complexity counting (and, later, attention studies)."""
