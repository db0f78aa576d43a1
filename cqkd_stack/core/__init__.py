"""The vocabulary every room shares: errors, results, the port policy, the stack contract,
documents and outside processes. No engine, no terminal; it imports only ``node/``.
"""
