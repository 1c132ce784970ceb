"""The second wall: one final scrubber for everything pangate or mitmproxy writes or prints."""
