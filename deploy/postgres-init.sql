-- Dagster's runs, events and schedules live in a database of their own beside the platform's.
CREATE DATABASE dagster OWNER waflow;
