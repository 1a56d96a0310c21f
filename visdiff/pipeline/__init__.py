"""The one place that wires stages into Ray Data graphs and runs them."""
