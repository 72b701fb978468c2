"""Notifications: from the results table's stream to people (SNS, optional chat webhook)."""
