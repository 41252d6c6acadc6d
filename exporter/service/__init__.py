"""The long-running exporter: config, scheduler, collector and HTTP endpoints."""
