__version__ = "0.2.0"   # 0.2: lower bounds carry witnesses the audit checks
