"""The service layer: one synchronous, transactional function a use-case, called by every door."""
