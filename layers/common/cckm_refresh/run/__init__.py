"""The run: requests taken in, resolved into chunks of one tenancy each, refreshed and
recorded (docs/architecture.md, "The flow")."""
