"""The media sandbox: runs user generator code outside the calling process, isolated and
limited. The media asset family runs a campaign's members in it (`assets_defs.media`); a
generator preview runs one sample member in it (`resources.generators`), so it sits below
both."""
