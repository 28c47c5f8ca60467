"""The standing fault-injection suite (issue 15): bad input of every class fed to the
public functions and the commands, interrupted and torn writes, memory bounds."""
