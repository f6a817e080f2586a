"""Shared test scaffolding: guests, nova, fakes. Imported by tests, benchmarks and tools;
never by the product (an import-linter contract) and never shipped (a wheel test)."""
