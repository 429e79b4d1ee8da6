"""What the API's routes call: files, uploads, batches, redrive, the results workers push,
model routing. Each reaches DynamoDB only through the store."""
