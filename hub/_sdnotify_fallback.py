class SystemdNotifier:
    def ready(self): pass
    def status(self, text): pass
    def stopping(self): pass
    async def watchdog_loop(self, ok):
        import asyncio
        await asyncio.Event().wait()
