"""DynamoDB and Step Functions access. Every boto3 call of the platform lives in this package."""
