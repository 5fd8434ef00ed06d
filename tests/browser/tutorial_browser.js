const token = '';
const wsUrl = `wss://api.voipbin.net/v1.0/ws?token=${token}`;

// Create WebSocket connection
const ws = new WebSocket(wsUrl);

ws.onopen = function(event) {
  console.log('WebSocket connection established');

  // Subscribe to events
  const subscription = {
    type: 'subscribe',
    topics: [
      'customer_id:12345678-1234-1234-1234-123456789012:call:*',
      'customer_id:12345678-1234-1234-1234-123456789012:message:*'
    ]
  };

  ws.send(JSON.stringify(subscription));
  console.log('Subscribed to events');
};

ws.onmessage = function(event) {
  const data = JSON.parse(event.data);
  const eventType = data.event_type;

  console.log(`Received event: ${eventType}`);

  switch(eventType) {
    case 'call.status':
      handleCallStatus(data.data);
      break;
    case 'message.received':
      handleMessageReceived(data.data);
      break;
    case 'activeflow.updated':
      handleActiveflowUpdate(data.data);
      break;
    default:
      console.log('Unknown event type:', eventType);
  }
};

ws.onerror = function(error) {
  console.error('WebSocket error:', error);
};

ws.onclose = function(event) {
  console.log('WebSocket connection closed:', event.code, event.reason);

  // Implement reconnection logic if needed
  setTimeout(function() {
    console.log('Reconnecting...');
    // Recreate connection
  }, 5000);
};

function handleCallStatus(callData) {
  console.log(`Call ${callData.id} status: ${callData.status}`);
  // Update UI
  document.getElementById('call-status').textContent = callData.status;
}

function handleMessageReceived(messageData) {
  console.log(`Message from ${messageData.source.target}: ${messageData.text}`);
  // Display message in UI
  const messageList = document.getElementById('messages');
  const messageElement = document.createElement('div');
  messageElement.textContent = `${messageData.source.target}: ${messageData.text}`;
  messageList.appendChild(messageElement);
}

function handleActiveflowUpdate(activeflowData) {
  console.log(`Activeflow ${activeflowData.id} action: ${activeflowData.current_action.type}`);
  // Update flow visualization
}
